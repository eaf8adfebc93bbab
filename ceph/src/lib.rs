//! `triad-ceph`: Triad's binding to Ceph's C client libraries, shared by the VMM (disks on RBD
//! images) and storaged (Ceph pools).
//!
//! [`Cluster`] is a connection, [`Pool`] an I/O context on one RADOS pool, [`Image`] an open RBD
//! image. Each holds its parent alive through an `Arc`, so handles are always released child
//! first. Every call returns [`Error`], which names what was being done and carries Ceph's
//! errno. The raw C declarations are in [`ffi`], public for the VMM's asynchronous I/O path,
//! which keeps its own buffers alive across librbd's callbacks.

#[cfg(feature = "dev-cluster")]
pub mod dev;
pub mod ffi;
mod image;

pub use image::{Image, Snapshot, Watcher};

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::Path;
use std::sync::Arc;

/// A failed Ceph call: what it was doing and the errno librados or librbd returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {}", std::io::Error::from_raw_os_error(*.errno))]
pub struct Error {
    pub what: String,
    pub errno: i32,
}

impl Error {
    pub fn new(what: impl Into<String>, errno: i32) -> Self {
        Self {
            what: what.into(),
            errno,
        }
    }

    pub fn kind(&self) -> std::io::ErrorKind {
        std::io::Error::from_raw_os_error(self.errno).kind()
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(e.kind(), e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Ceph's negative-errno convention as a `Result`; the message is only built on failure.
pub(crate) fn check(rc: c_int, what: impl FnOnce() -> String) -> Result<()> {
    if rc < 0 {
        return Err(Error::new(what(), -rc));
    }
    Ok(())
}

pub(crate) fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s)
        .map_err(|_| Error::new(format!("{what} {s:?} contains a NUL byte"), libc::EINVAL))
}

/// Copies a C string librados or librbd owns.
///
/// # Safety
/// `ptr` is null or a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn owned(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// RBD image features Triad creates images with: copy-on-write clones (layering), one writer
/// at a time (exclusive-lock), and the object map with fast-diff, so that usage and clones
/// need not visit every object.
pub const FEATURES: u64 = 1 | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5);

/// A connection to a Ceph cluster.
#[derive(Debug)]
pub struct Cluster {
    handle: ffi::Rados,
}

// SAFETY: a librados cluster handle may be used from any thread once connected; librados
// locks inside.
unsafe impl Send for Cluster {}
// SAFETY: as for `Send`.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Connects as `client` (a cephx user without its `client.` prefix) to the cluster
    /// `conf` describes, with the `options` set first.
    pub fn connect(conf: &Path, client: &str, options: &[(&str, &str)]) -> Result<Arc<Self>> {
        let client_c = cstring(client, "the Ceph client name")?;
        let conf_str = conf
            .to_str()
            .ok_or_else(|| Error::new("the Ceph config path is not UTF-8", libc::EINVAL))?;
        let conf_c = cstring(conf_str, "the Ceph config path")?;
        let mut this = Self {
            handle: std::ptr::null_mut(),
        };
        // SAFETY: valid NUL-terminated strings that outlive the call; the handle written into
        // `this` is released by its `Drop`, also on the error paths below.
        let rc = unsafe { ffi::rados_create(&mut this.handle, client_c.as_ptr()) };
        check(rc, || "creating the Ceph client".into())?;
        // SAFETY: as above, on the handle just created.
        let rc = unsafe { ffi::rados_conf_read_file(this.handle, conf_c.as_ptr()) };
        check(rc, || format!("reading {}", conf.display()))?;
        for (key, value) in options {
            let (k, v) = (cstring(key, "option")?, cstring(value, "option value")?);
            // SAFETY: as above.
            let rc = unsafe { ffi::rados_conf_set(this.handle, k.as_ptr(), v.as_ptr()) };
            check(rc, || format!("setting Ceph option {key}={value}"))?;
        }
        // SAFETY: a configured handle.
        check(unsafe { ffi::rados_connect(this.handle) }, || {
            format!("connecting to the Ceph cluster of {}", conf.display())
        })?;
        Ok(Arc::new(this))
    }

    /// An I/O context on pool `name`.
    pub fn pool(self: &Arc<Self>, name: &str) -> Result<Arc<Pool>> {
        let name_c = cstring(name, "the pool name")?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: a connected cluster, a valid string, and a handle slot on this frame.
        let rc = unsafe { ffi::rados_ioctx_create(self.handle, name_c.as_ptr(), &mut handle) };
        check(rc, || format!("opening pool {name}"))?;
        Ok(Arc::new(Pool {
            cluster: self.clone(),
            handle,
            name: name.to_owned(),
        }))
    }

    /// The cluster's raw capacity: (total, used, available) bytes.
    pub fn capacity(&self) -> Result<(u64, u64, u64)> {
        let mut stat = ffi::ClusterStat {
            kb: 0,
            kb_used: 0,
            kb_avail: 0,
            num_objects: 0,
        };
        // SAFETY: a connected cluster and a struct on this frame laid out as librados'.
        let rc = unsafe { ffi::rados_cluster_stat(self.handle, &mut stat) };
        check(rc, || "reading the cluster's capacity".into())?;
        Ok((stat.kb * 1024, stat.kb_used * 1024, stat.kb_avail * 1024))
    }

    /// Blocklists a client address (as RBD's watcher list gives it) for `expire_seconds`
    /// (0: Ceph's default, an hour): every OSD refuses its operations from then on, so a
    /// node that is cut off can no longer write to the images it had open.
    pub fn blocklist_add(&self, addr: &str, expire_seconds: u32) -> Result<()> {
        let addr_c = cstring(addr, "the client address")?;
        // SAFETY: librados only reads the string (the header's `char *` is not const).
        check(
            unsafe {
                ffi::rados_blocklist_add(self.handle, addr_c.as_ptr().cast_mut(), expire_seconds)
            },
            || format!("blocklisting {addr}"),
        )
    }

    /// This connection's global id: RBD watchers and lock owners name it (`client.<id>`).
    pub fn instance_id(&self) -> u64 {
        // SAFETY: a connected cluster.
        unsafe { ffi::rados_get_instance_id(self.handle) }
    }

    /// Runs a monitor command given as JSON; returns its output and status text.
    pub fn mon_command(&self, json: &str) -> Result<(Vec<u8>, String)> {
        let cmd = cstring(json, "the monitor command")?;
        let mut cmds = [cmd.as_ptr()];
        let (mut out, mut out_len) = (std::ptr::null_mut(), 0usize);
        let (mut status, mut status_len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: one valid command string; librados allocates the output buffers, which are
        // copied and freed below.
        let rc = unsafe {
            ffi::rados_mon_command(
                self.handle,
                cmds.as_mut_ptr(),
                1,
                std::ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        let take = |buf: *mut c_char, len: usize| -> Vec<u8> {
            if buf.is_null() {
                return Vec::new();
            }
            // SAFETY: librados returned `len` bytes at `buf`, freed once here.
            unsafe {
                let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), len).to_vec();
                ffi::rados_buffer_free(buf);
                bytes
            }
        };
        let out = take(out, out_len);
        let status = String::from_utf8_lossy(&take(status, status_len)).into_owned();
        check(rc, || format!("monitor command {json}: {status}"))?;
        Ok((out, status))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: created by `connect`; every pool holds an `Arc` to this cluster, so none
            // is left.
            unsafe { ffi::rados_shutdown(self.handle) };
        }
    }
}

/// An I/O context on one RADOS pool.
#[derive(Debug)]
pub struct Pool {
    cluster: Arc<Cluster>,
    handle: ffi::IoCtx,
    name: String,
}

// SAFETY: librados I/O contexts may be shared between threads for the calls made here.
unsafe impl Send for Pool {}
// SAFETY: as for `Send`.
unsafe impl Sync for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: created by `Cluster::pool`; every image holds an `Arc` to this pool.
        unsafe { ffi::rados_ioctx_destroy(self.handle) };
    }
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The names of the pool's RBD images.
    pub fn images(&self) -> Result<Vec<String>> {
        let mut specs: Vec<ffi::ImageSpec> = Vec::new();
        let mut max = 64usize;
        loop {
            specs.resize_with(max, || ffi::ImageSpec {
                id: std::ptr::null_mut(),
                name: std::ptr::null_mut(),
            });
            // SAFETY: `specs` has room for `max` entries; librbd fills at most that many and
            // says how many it needs when they are too few.
            let rc = unsafe { ffi::rbd_list2(self.handle, specs.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                continue;
            }
            check(rc, || format!("listing the images of pool {}", self.name))?;
            // SAFETY: librbd filled `max` entries, freed once after they are copied.
            let names = unsafe {
                let names = specs[..max].iter().map(|s| owned(s.name)).collect();
                ffi::rbd_image_spec_list_cleanup(specs.as_mut_ptr(), max);
                names
            };
            return Ok(names);
        }
    }

    /// Creates image `name` of `size` bytes with Triad's [`FEATURES`].
    pub fn create_image(&self, name: &str, size: u64) -> Result<()> {
        let name_c = cstring(name, "the image name")?;
        let mut order = 0;
        // SAFETY: an open pool, a valid string, an int on this frame.
        let rc =
            unsafe { ffi::rbd_create2(self.handle, name_c.as_ptr(), size, FEATURES, &mut order) };
        check(rc, || format!("creating image {}/{name}", self.name))
    }

    /// Creates `child` as a copy-on-write clone of the protected snapshot `parent@snap`.
    pub fn clone_image(&self, parent: &str, snap: &str, child: &str) -> Result<()> {
        let parent_c = cstring(parent, "the image name")?;
        let snap_c = cstring(snap, "the snapshot name")?;
        let child_c = cstring(child, "the image name")?;
        let mut order = 0;
        // SAFETY: an open pool (parent and child in it), valid strings, an int on this frame.
        check(
            unsafe {
                ffi::rbd_clone2(
                    self.handle,
                    parent_c.as_ptr(),
                    snap_c.as_ptr(),
                    self.handle,
                    child_c.as_ptr(),
                    FEATURES,
                    &mut order,
                    0,
                    0,
                )
            },
            || format!("cloning {}/{parent}@{snap} to {child}", self.name),
        )
    }

    /// Removes image `name` (it must have no snapshots and no client holding it open).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let name_c = cstring(name, "the image name")?;
        // SAFETY: an open pool and a valid string.
        let rc = unsafe { ffi::rbd_remove(self.handle, name_c.as_ptr()) };
        check(rc, || format!("removing image {}/{name}", self.name))
    }

    /// Renames image `from` to `to`, atomically in the pool's directory.
    pub fn rename_image(&self, from: &str, to: &str) -> Result<()> {
        let from_c = cstring(from, "the image name")?;
        let to_c = cstring(to, "the image name")?;
        // SAFETY: an open pool and valid strings.
        let rc = unsafe { ffi::rbd_rename(self.handle, from_c.as_ptr(), to_c.as_ptr()) };
        check(rc, || {
            format!("renaming image {}/{from} to {to}", self.name)
        })
    }

    /// Opens image `name` for reading and writing (without taking its lock).
    pub fn open(self: &Arc<Self>, name: &str) -> Result<Image> {
        Image::open(self, name, false, None)
    }

    /// Opens image `name`, or its snapshot `snap`, read-only.
    pub fn open_read_only(self: &Arc<Self>, name: &str, snap: Option<&str>) -> Result<Image> {
        Image::open(self, name, true, snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_call_and_the_errno() {
        let e = Error::new("opening image rbd/x", libc::ENOENT);
        assert_eq!(
            e.to_string(),
            "opening image rbd/x: No such file or directory (os error 2)"
        );
        assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::NotFound);
        assert!(check(-libc::EBUSY, || "x".into()).is_err_and(|e| e.errno == libc::EBUSY));
        assert!(check(0, || unreachable!()).is_ok());
    }

    #[test]
    fn strings_with_nul_bytes_are_refused_before_any_call() {
        let e = cstring("a\0b", "the image name").unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.what.contains("NUL"));
    }
}
