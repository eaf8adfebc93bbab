//! Where a virtio-blk device's bytes live. The device sees only `BlkBackend`; the raw-file
//! backend is here, and the Ceph RBD backend (storage issue) will implement the same trait.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags};
use triad_api::vmm::CacheMode;

/// A data operation and the buffer it reads into or writes from. The backend owns the buffer
/// until the operation comes back from `complete`, so an asynchronous engine may hand it to
/// the kernel.
#[derive(Debug)]
pub struct Io {
    /// The caller's handle; unique among operations in flight.
    pub tag: u16,
    pub op: Op,
    pub offset: u64,
    pub buf: AlignedBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    /// Forget `len` bytes; reads of them return zeroes (a hole).
    Discard {
        len: u64,
    },
    /// Make `len` bytes read as zeroes; `unmap` allows a hole.
    WriteZeroes {
        len: u64,
        unmap: bool,
    },
}

/// A finished operation with its buffer back.
#[derive(Debug)]
pub struct Done {
    pub tag: u16,
    pub result: io::Result<()>,
    pub buf: AlignedBuf,
}

impl Done {
    /// `io` ended in `error` without reaching the disk.
    pub fn failed(io: Io, error: io::Error) -> Self {
        Self {
            tag: io.tag,
            result: Err(error),
            buf: io.buf,
        }
    }
}

pub trait BlkBackend: Send + std::fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// The smallest I/O the backend can do (the guest's logical block size).
    fn block_size(&self) -> u32 {
        512
    }
    /// Starts `io`; it finishes, well or badly, through `complete`.
    fn submit(&mut self, io: Io);
    /// Lets submitted operations start, for engines that batch them.
    fn kick(&mut self) {}
    /// Moves finished operations into `out`.
    fn complete(&mut self, out: &mut Vec<Done>);
    /// Readable when `complete` has something to report; `None` when operations finish
    /// inside `submit`.
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Runs one operation synchronously with positioned I/O.
pub fn run_sync(file: &File, io: &mut Io) -> io::Result<()> {
    match io.op {
        Op::Read => file.read_exact_at(io.buf.as_mut_slice(), io.offset),
        Op::Write => file.write_all_at(io.buf.as_mut_slice(), io.offset),
        Op::Flush => file.sync_data(),
        Op::Discard { len } => punch_hole(file, io.offset, len),
        Op::WriteZeroes { len, unmap } => write_zeroes(file, io.offset, len, unmap),
    }
}

/// A raw image file. Cache modes are the ones users know from KVM platforms:
/// `none` = O_DIRECT (host page cache bypassed; the caller's buffers must be aligned),
/// `writethrough` = O_DSYNC (every write durable on completion), `writeback` = page cache,
/// made durable by FLUSH (fdatasync).
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    len: u64,
    block_size: u32,
    done: Vec<Done>,
}

/// Alignment O_DIRECT buffers need (a page covers every logical block size in use).
pub const DIRECT_IO_ALIGN: usize = 4096;

impl FileBackend {
    pub fn open(path: &Path, read_only: bool, cache: CacheMode) -> io::Result<Self> {
        Self::from_file(open_image(path, read_only, cache)?)
    }

    pub fn from_file(file: File) -> io::Result<Self> {
        Ok(Self {
            len: image_size(&file)?,
            block_size: direct_io_block(&file),
            file,
            done: Vec::new(),
        })
    }
}

/// The size of an image file or block device (whose metadata says 0).
pub fn image_size(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    f.seek(io::SeekFrom::End(0))
}

/// The logical block size direct I/O needs on `file`: 512 unless a 512-byte O_DIRECT read is
/// refused (a host device with 4 KiB sectors), then 4096. Files opened without O_DIRECT
/// always take 512.
pub fn direct_io_block(file: &File) -> u32 {
    let mut buf = AlignedBuf::new(512);
    match file.read_at(buf.as_mut_slice(), 512) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => 4096,
        _ => 512,
    }
}

/// Opens an image with the flags of its cache mode.
pub fn open_image(path: &Path, read_only: bool, cache: CacheMode) -> io::Result<File> {
    {
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
        // One writer, or any number of readers, per image across processes (and across nodes
        // on NFS, where flock is a POSIX lock): a second VMM on a disk is refused, and
        // storaged will not roll a disk back or delete it under a running VM.
        let mode = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "the image is in use: another process holds its lock",
                ),
                _ => e,
            });
        }
        Ok(file)
    }
}

impl BlkBackend for FileBackend {
    fn size(&self) -> u64 {
        self.len
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn submit(&mut self, mut io: Io) {
        let result = run_sync(&self.file, &mut io);
        self.done.push(Done {
            tag: io.tag,
            result,
            buf: io.buf,
        });
    }

    fn complete(&mut self, out: &mut Vec<Done>) {
        out.append(&mut self.done);
    }
}

pub fn write_zeroes(file: &File, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
    if unmap {
        return punch_hole(file, offset, len);
    }
    let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, flags, to_off(offset)?, to_off(len)?) {
        Ok(()) => Ok(()),
        // A filesystem without ZERO_RANGE: a hole reads as zeroes too.
        Err(nix::errno::Errno::EOPNOTSUPP) => punch_hole(file, offset, len),
        Err(e) => Err(e.into()),
    }
}

pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file, flags, to_off(offset)?, to_off(len)?).map_err(io::Error::from)
}

fn to_off(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A bounce buffer aligned for O_DIRECT, without unsafe allocation: a slightly larger vector,
/// used from its first aligned byte. Its heap block never moves while it is alive, so its
/// address may be handed to the kernel.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_IO_ALIGN];
        let misalign = storage.as_ptr() as usize % DIRECT_IO_ALIGN;
        let start = (DIRECT_IO_ALIGN - misalign) % DIRECT_IO_ALIGN;
        Self {
            storage,
            start,
            len,
        }
    }

    /// Makes the buffer `len` bytes long, reallocating only when it must grow.
    pub fn set_len(&mut self, len: usize) {
        if self.start + len > self.storage.len() {
            *self = Self::new(len);
        }
        self.len = len;
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
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
            let mut done = Vec::new();
            for (tag, op, buf) in [
                (1, Op::Write, buf),
                (2, Op::Flush, AlignedBuf::default()),
                (3, Op::Read, AlignedBuf::new(4096)),
            ] {
                b.submit(Io {
                    tag,
                    op,
                    offset: 8192,
                    buf,
                });
                b.complete(&mut done);
            }
            assert!(done.iter().all(|d| d.result.is_ok()), "{cache:?}: {done:?}");
            let read = &mut done[2].buf;
            assert!(read.as_mut_slice().iter().all(|&x| x == 0xab), "{cache:?}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn discard_punches_holes_so_thin_images_stay_thin() {
        let path = image("discard", 4 << 20);
        let mut b = FileBackend::open(&path, false, CacheMode::Writeback).unwrap();
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert!(allocated(&path) >= 1 << 20);
        let mut done = Vec::new();
        b.submit(Io {
            tag: 0,
            op: Op::Discard { len: 1 << 20 },
            offset: 0,
            buf: AlignedBuf::default(),
        });
        b.complete(&mut done);
        assert!(done[0].result.is_ok());
        assert!(
            allocated(&path) < 1 << 20,
            "{} bytes still allocated",
            allocated(&path)
        );
        let read_back = || std::fs::read(&path).unwrap()[..4096].to_vec();
        assert!(read_back().iter().all(|&x| x == 0));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&[7u8; 512], 512)
            .unwrap();
        b.submit(Io {
            tag: 1,
            op: Op::WriteZeroes {
                len: 4096,
                unmap: false,
            },
            offset: 0,
            buf: AlignedBuf::default(),
        });
        b.complete(&mut done);
        assert!(done[1].result.is_ok());
        assert!(read_back().iter().all(|&x| x == 0));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn read_only_files_refuse_writes() {
        let path = image("ro", 1 << 20);
        let mut b = FileBackend::open(&path, true, CacheMode::Writeback).unwrap();
        let mut done = Vec::new();
        b.submit(Io {
            tag: 0,
            op: Op::Write,
            offset: 0,
            buf: AlignedBuf::new(512),
        });
        b.complete(&mut done);
        assert!(done[0].result.is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn aligned_buffers_are_aligned_and_reused() {
        for len in [512, 4096, 65536] {
            let mut b = AlignedBuf::new(len);
            let s = b.as_mut_slice();
            assert_eq!((s.len(), s.as_ptr() as usize % DIRECT_IO_ALIGN), (len, 0));
        }
        let mut b = AlignedBuf::new(8192);
        let first = b.as_mut_ptr();
        b.set_len(512);
        assert_eq!((b.as_mut_ptr(), b.as_mut_slice().len()), (first, 512));
        b.set_len(1 << 20);
        assert_eq!(
            (
                b.as_mut_slice().len(),
                b.as_mut_ptr() as usize % DIRECT_IO_ALIGN
            ),
            (1 << 20, 0)
        );
    }
}
