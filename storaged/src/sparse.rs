//! Copying files without filling their holes: only the extents that hold data are copied
//! (found with SEEK_DATA/SEEK_HOLE), with copy_file_range, which shares the blocks instead of
//! copying them where the filesystem can (reflinks on XFS and Btrfs).

use std::fs::File;
use std::io;

use nix::unistd::{lseek, Whence};

/// The data extents of `file` up to `len`: (offset, length) pairs.
pub fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut at = 0u64;
    while at < len {
        let offset = i64::try_from(at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let start = match lseek(file, offset, Whence::SeekData) {
            Ok(start) => start.unsigned_abs(),
            // No data past `at`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let start_off =
            i64::try_from(start).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let end = lseek(file, start_off, Whence::SeekHole)?
            .unsigned_abs()
            .min(len);
        if end > start {
            extents.push((start, end - start));
        }
        at = end;
    }
    Ok(extents)
}

/// Makes `dst` share all of `src`'s blocks (FICLONE), in an instant and atomically; false
/// where the filesystem has no reflinks.
pub fn reflink(src: &File, dst: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: FICLONE takes the source descriptor by value; both descriptors are open.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY) => Ok(false),
        _ => Err(e),
    }
}

/// Makes `dst` (empty) a copy of the first `len` bytes of `src` with the same holes.
pub fn copy(src: &File, dst: &File, len: u64) -> io::Result<()> {
    dst.set_len(len)?;
    for (start, length) in data_extents(src, len)? {
        let mut off_in =
            i64::try_from(start).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut off_out = off_in;
        let mut left = length;
        while left > 0 {
            let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
            let n = nix::fcntl::copy_file_range(
                src,
                Some(&mut off_in),
                dst,
                Some(&mut off_out),
                chunk,
            )?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source ended early",
                ));
            }
            left -= n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn copies_keep_holes_and_data() {
        let dir = std::env::temp_dir().join(format!("triad-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&a)
            .unwrap();
        let len = 64 << 20;
        src.set_len(len).unwrap();
        src.write_all_at(&[1; 4096], 0).unwrap();
        src.write_all_at(&[2; 8192], 32 << 20).unwrap();
        src.write_all_at(&[3; 10], len - 10).unwrap();
        let extents = data_extents(&src, len).unwrap();
        assert_eq!(extents.len(), 3, "{extents:?}");
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&b)
            .unwrap();
        copy(&src, &dst, len).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let allocated = dst.metadata().unwrap().blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "{allocated} bytes allocated: holes filled"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
