//! An open RBD image and what Triad does with one: size, locks, watchers, metadata,
//! snapshots, usage and synchronous I/O.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;

use crate::{check, cstring, ffi, owned, Error, Pool, Result};

/// An open RBD image, closed on drop.
#[derive(Debug)]
pub struct Image {
    pool: Arc<Pool>,
    handle: ffi::RbdImage,
    name: String,
}

// SAFETY: librbd serialises operations on an image handle inside; the handle may move
// between threads.
unsafe impl Send for Image {}
// SAFETY: as for `Send`: every method is a librbd call, which locks inside.
unsafe impl Sync for Image {}

/// A client watching an image (it has it open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Its address, as `blocklist_add` takes it.
    pub addr: String,
    /// Its global id (`client.<id>`).
    pub id: i64,
}

/// One snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub size: u64,
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by `Image::open`; nothing uses the handle after this.
        unsafe { ffi::rbd_close(self.handle) };
    }
}

impl Image {
    pub(crate) fn open(
        pool: &Arc<Pool>,
        name: &str,
        read_only: bool,
        snap: Option<&str>,
    ) -> Result<Self> {
        let name_c = cstring(name, "the image name")?;
        let snap_c = snap.map(|s| cstring(s, "the snapshot name")).transpose()?;
        let snap_ptr = snap_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let mut handle = std::ptr::null_mut();
        // SAFETY: an open pool, valid strings (or null for no snapshot), a handle slot on this
        // frame that `Drop` releases once it is set.
        let rc = unsafe {
            if read_only {
                ffi::rbd_open_read_only(pool.handle, name_c.as_ptr(), &mut handle, snap_ptr)
            } else {
                ffi::rbd_open(pool.handle, name_c.as_ptr(), &mut handle, snap_ptr)
            }
        };
        check(rc, || format!("opening image {}/{name}", pool.name))?;
        Ok(Self {
            pool: pool.clone(),
            handle,
            name: name.to_owned(),
        })
    }

    fn what(&self, doing: &str) -> String {
        format!("{doing} {}/{}", self.pool.name, self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The librbd handle, for the asynchronous calls in [`ffi`]; valid while `self` lives.
    pub fn raw(&self) -> ffi::RbdImage {
        self.handle
    }

    pub fn size(&self) -> Result<u64> {
        let mut size = 0;
        // SAFETY: an open image and a u64 on this frame.
        check(unsafe { ffi::rbd_get_size(self.handle, &mut size) }, || {
            self.what("reading the size of")
        })?;
        Ok(size)
    }

    /// When the image was created.
    pub fn created(&self) -> Result<std::time::SystemTime> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: an open image and a timespec on this frame.
        let rc = unsafe { ffi::rbd_get_create_timestamp(self.handle, &mut ts) };
        check(rc, || self.what("reading the creation time of"))?;
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
        Ok(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }

    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: an open image.
        check(unsafe { ffi::rbd_resize(self.handle, size) }, || {
            self.what("resizing")
        })
    }

    /// Copies the parent's data into a clone, which then no longer depends on it.
    pub fn flatten(&self) -> Result<()> {
        // SAFETY: an open image.
        check(unsafe { ffi::rbd_flatten(self.handle) }, || {
            self.what("flattening")
        })
    }

    /// Takes the image's exclusive lock and keeps it: while this handle is open, other
    /// clients asking for the lock are refused (EBUSY) instead of being handed it.
    pub fn lock_exclusive(&self) -> Result<()> {
        // SAFETY: an open image.
        match unsafe { ffi::rbd_lock_acquire(self.handle, ffi::RBD_LOCK_MODE_EXCLUSIVE) } {
            rc if rc == -libc::EROFS => Err(Error::new(
                self.what("taking the exclusive lock of") + ": another client holds it",
                libc::EBUSY,
            )),
            rc => check(rc, || self.what("taking the exclusive lock of")),
        }
    }

    /// Who holds the image's exclusive lock (client addresses), if anyone.
    pub fn lock_owners(&self) -> Result<Vec<String>> {
        let mut owners: Vec<*mut c_char> = Vec::new();
        let mut max = 4usize;
        loop {
            owners.resize(max, std::ptr::null_mut());
            let mut mode: c_int = 0;
            // SAFETY: room for `max` owner pointers, which librbd allocates.
            let rc = unsafe {
                ffi::rbd_lock_get_owners(self.handle, &mut mode, owners.as_mut_ptr(), &mut max)
            };
            match rc {
                rc if rc == -libc::ERANGE => continue,
                rc if rc == -libc::ENOENT => return Ok(Vec::new()),
                rc => check(rc, || self.what("listing the lock owners of"))?,
            }
            // SAFETY: librbd filled `max` strings, freed once after they are copied.
            return Ok(unsafe {
                let names = owners[..max].iter().map(|&p| owned(p)).collect();
                ffi::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), max);
                names
            });
        }
    }

    /// The clients that have the image open.
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let mut list: Vec<ffi::ImageWatcher> = Vec::new();
        let mut max = 8usize;
        loop {
            list.resize_with(max, || ffi::ImageWatcher {
                addr: std::ptr::null_mut(),
                id: 0,
                cookie: 0,
            });
            // SAFETY: room for `max` entries, whose strings librbd allocates.
            let rc = unsafe { ffi::rbd_watchers_list(self.handle, list.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                continue;
            }
            check(rc, || self.what("listing the watchers of"))?;
            // SAFETY: librbd filled `max` entries, freed once after they are copied.
            return Ok(unsafe {
                let watchers = list[..max]
                    .iter()
                    .map(|w| Watcher {
                        addr: owned(w.addr),
                        id: w.id,
                    })
                    .collect();
                ffi::rbd_watchers_list_cleanup(list.as_mut_ptr(), max);
                watchers
            });
        }
    }

    /// The image metadata value under `key`, if set.
    pub fn metadata(&self, key: &str) -> Result<Option<String>> {
        let key_c = cstring(key, "the metadata key")?;
        let mut buf = vec![0u8; 256];
        loop {
            let mut len = buf.len();
            // SAFETY: `buf` has `len` bytes; librbd writes at most that many (NUL included)
            // and says how many it needs when they are too few.
            let rc = unsafe {
                ffi::rbd_metadata_get(
                    self.handle,
                    key_c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            match rc {
                rc if rc == -libc::ERANGE => buf.resize(len.max(buf.len() * 2), 0),
                rc if rc == -libc::ENOENT => return Ok(None),
                rc => {
                    check(rc, || self.what(&format!("reading metadata {key} of")))?;
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
                }
            }
        }
    }

    pub fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        let key_c = cstring(key, "the metadata key")?;
        let value_c = cstring(value, "the metadata value")?;
        // SAFETY: an open image and valid strings.
        let rc = unsafe { ffi::rbd_metadata_set(self.handle, key_c.as_ptr(), value_c.as_ptr()) };
        check(rc, || self.what(&format!("setting metadata {key} of")))
    }

    /// Bytes the image's own objects hold (not its parent's), object by object: what it
    /// takes of the pool before replication.
    pub fn allocated_bytes(&self) -> Result<u64> {
        extern "C" fn add(_offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
            if exists != 0 {
                // SAFETY: `arg` is the u64 on `allocated_bytes`' frame, alive for the call.
                unsafe { *arg.cast::<u64>() += len as u64 };
            }
            0
        }
        let size = self.size()?;
        let mut total = 0u64;
        // SAFETY: an open image; the callback gets the `total` on this frame, which outlives
        // the (synchronous) iteration.
        let rc = unsafe {
            ffi::rbd_diff_iterate2(
                self.handle,
                std::ptr::null(),
                0,
                size,
                0,
                1,
                add,
                std::ptr::addr_of_mut!(total).cast(),
            )
        };
        check(rc, || self.what("measuring"))?;
        Ok(total)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        // SAFETY: `buf` is valid for reads of its length during the (synchronous) call.
        let n = unsafe { ffi::rbd_write2(self.handle, offset, buf.len(), buf.as_ptr().cast(), 0) };
        match usize::try_from(n) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(Error::new(self.what("short write to"), libc::EIO)),
            Err(_) => Err(Error::new(
                self.what("writing to"),
                i32::try_from(-n).unwrap_or(libc::EIO),
            )),
        }
    }

    /// Reads `buf.len()` bytes at `offset` (zeroes past the end of the data).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: `buf` is valid for writes of its length during the (synchronous) call.
        let n = unsafe { ffi::rbd_read(self.handle, offset, buf.len(), buf.as_mut_ptr().cast()) };
        usize::try_from(n).map_err(|_| {
            Error::new(
                self.what("reading from"),
                i32::try_from(-n).unwrap_or(libc::EIO),
            )
        })
    }

    pub fn flush(&self) -> Result<()> {
        // SAFETY: an open image.
        check(unsafe { ffi::rbd_flush(self.handle) }, || {
            self.what("flushing")
        })
    }

    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut max: c_int = 16;
        loop {
            let mut list: Vec<ffi::SnapInfo> = (0..max)
                .map(|_| ffi::SnapInfo {
                    id: 0,
                    size: 0,
                    name: std::ptr::null(),
                })
                .collect();
            // SAFETY: room for `max` entries (librbd also writes a terminating one, so it asks
            // for one more than it fills); names are freed by `rbd_snap_list_end`.
            let rc = unsafe { ffi::rbd_snap_list(self.handle, list.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                continue;
            }
            check(rc, || self.what("listing the snapshots of"))?;
            let count = usize::try_from(rc).unwrap_or(0);
            // SAFETY: librbd filled `count` entries, freed once after they are copied.
            return Ok(unsafe {
                let snaps = list[..count]
                    .iter()
                    .map(|s| Snapshot {
                        name: owned(s.name),
                        size: s.size,
                    })
                    .collect();
                ffi::rbd_snap_list_end(list.as_mut_ptr());
                snaps
            });
        }
    }

    fn snap_call(
        &self,
        snap: &str,
        doing: &str,
        call: unsafe extern "C" fn(ffi::RbdImage, *const c_char) -> c_int,
    ) -> Result<()> {
        let snap_c: CString = cstring(snap, "the snapshot name")?;
        // SAFETY: `call` is one of librbd's snapshot calls, which take an open image and a
        // valid snapshot name.
        check(unsafe { call(self.handle, snap_c.as_ptr()) }, || {
            format!("{doing} snapshot {}/{}@{snap}", self.pool.name, self.name)
        })
    }

    pub fn create_snapshot(&self, snap: &str) -> Result<()> {
        self.snap_call(snap, "creating", ffi::rbd_snap_create)
    }

    pub fn remove_snapshot(&self, snap: &str) -> Result<()> {
        self.snap_call(snap, "removing", ffi::rbd_snap_remove)
    }

    /// Puts the image's data back as it was at `snap` (needs the exclusive lock: fails while
    /// another client has the image open for writing).
    pub fn rollback(&self, snap: &str) -> Result<()> {
        self.snap_call(snap, "rolling back to", ffi::rbd_snap_rollback)
    }

    /// Protects `snap` from removal, as clones of it need.
    pub fn protect(&self, snap: &str) -> Result<()> {
        self.snap_call(snap, "protecting", ffi::rbd_snap_protect)
    }

    /// Fails (EBUSY) while clones of `snap` exist.
    pub fn unprotect(&self, snap: &str) -> Result<()> {
        self.snap_call(snap, "unprotecting", ffi::rbd_snap_unprotect)
    }

    pub fn is_protected(&self, snap: &str) -> Result<bool> {
        let snap_c = cstring(snap, "the snapshot name")?;
        let mut protected: c_int = 0;
        // SAFETY: an open image, a valid name, an int on this frame.
        let rc =
            unsafe { ffi::rbd_snap_is_protected(self.handle, snap_c.as_ptr(), &mut protected) };
        check(rc, || {
            format!("reading snapshot {}/{}@{snap}", self.pool.name, self.name)
        })?;
        Ok(protected != 0)
    }
}
