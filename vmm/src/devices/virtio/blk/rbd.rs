//! Ceph RBD images as disks, through librbd's asynchronous API: the VMM is a Ceph client of its
//! own (no krbd, no nbd), holds the image's exclusive lock while it runs, and reports a fenced
//! client (blocklisted: every operation fails) to the guest as I/O errors.
//!
//! `unsafe` lives here because librbd is C: the handles are owned by `Image` and released in
//! `Drop`; every buffer librbd reads or writes is owned by an operation kept in `in_flight`
//! until librbd's callback has reported it, and dropping the backend waits for all of them.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use triad_api::vmm::CacheMode;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{BlkBackend, Done, Io, Op};

type Rados = *mut c_void;
type IoCtx = *mut c_void;
type RbdImage = *mut c_void;
type Completion = *mut c_void;
type Callback = extern "C" fn(Completion, *mut c_void);

const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;

#[link(name = "rados")]
extern "C" {
    fn rados_create(cluster: *mut Rados, id: *const c_char) -> c_int;
    fn rados_conf_read_file(cluster: Rados, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: Rados, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: Rados) -> c_int;
    fn rados_shutdown(cluster: Rados);
    fn rados_ioctx_create(cluster: Rados, pool: *const c_char, ioctx: *mut IoCtx) -> c_int;
    fn rados_ioctx_destroy(ioctx: IoCtx);
}

#[link(name = "rbd")]
extern "C" {
    fn rbd_open(io: IoCtx, name: *const c_char, image: *mut RbdImage, snap: *const c_char)
        -> c_int;
    fn rbd_open_read_only(
        io: IoCtx,
        name: *const c_char,
        image: *mut RbdImage,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_close(image: RbdImage) -> c_int;
    fn rbd_get_size(image: RbdImage, size: *mut u64) -> c_int;
    fn rbd_lock_acquire(image: RbdImage, mode: c_int) -> c_int;
    fn rbd_aio_create_completion(arg: *mut c_void, cb: Callback, c: *mut Completion) -> c_int;
    fn rbd_aio_get_return_value(c: Completion) -> isize;
    fn rbd_aio_release(c: Completion);
    fn rbd_aio_read(
        image: RbdImage,
        off: u64,
        len: usize,
        buf: *mut c_char,
        c: Completion,
    ) -> c_int;
    fn rbd_aio_write(
        image: RbdImage,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: Completion,
    ) -> c_int;
    fn rbd_aio_flush(image: RbdImage, c: Completion) -> c_int;
    fn rbd_aio_discard(image: RbdImage, off: u64, len: u64, c: Completion) -> c_int;
    fn rbd_aio_write_zeroes(
        image: RbdImage,
        off: u64,
        len: usize,
        c: Completion,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
}

/// Where an RBD disk lives and who the VMM is to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdTarget {
    pub pool: String,
    pub image: String,
    /// The cluster's ceph.conf (monitors, keyring).
    pub conf: std::path::PathBuf,
    /// The cephx user without its `client.` prefix.
    pub client: String,
}

/// librbd's error codes as I/O errors, naming what failed.
fn check(rc: c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::from_raw_os_error(-rc);
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn cstring(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// A connected cluster handle, an I/O context on the pool and the open image, released in
/// reverse order.
struct Image {
    cluster: Rados,
    ioctx: IoCtx,
    image: RbdImage,
}

// SAFETY: librados and librbd handles may be used from any thread (librbd serialises inside);
// this process only uses them from the device's I/O thread at a time.
unsafe impl Send for Image {}

impl Image {
    fn open(target: &RbdTarget, read_only: bool, cache: CacheMode) -> io::Result<Self> {
        let client = cstring(&target.client, "the Ceph client name")?;
        let conf = cstring(
            target
                .conf
                .to_str()
                .ok_or_else(|| io::Error::other("the Ceph config path is not UTF-8"))?,
            "the Ceph config path",
        )?;
        let pool = cstring(&target.pool, "the pool name")?;
        let name = cstring(&target.image, "the image name")?;
        let mut this = Self {
            cluster: std::ptr::null_mut(),
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
        };
        // SAFETY: each call gets valid NUL-terminated strings that outlive it and writes one
        // handle into `this`, whose `Drop` releases whatever was created, also on the error
        // paths below.
        unsafe {
            check(
                rados_create(&mut this.cluster, client.as_ptr()),
                "creating the Ceph client",
            )?;
            check(
                rados_conf_read_file(this.cluster, conf.as_ptr()),
                &format!("reading {}", target.conf.display()),
            )?;
            // The cache modes users know from KVM platforms, in librbd's terms.
            let (rbd_cache, max_dirty) = match cache {
                CacheMode::None => ("false", None),
                CacheMode::Writethrough => ("true", Some("0")),
                CacheMode::Writeback => ("true", None),
            };
            let set = |k: &str, v: &str| -> io::Result<()> {
                let (k, v) = (cstring(k, k)?, cstring(v, v)?);
                check(
                    rados_conf_set(this.cluster, k.as_ptr(), v.as_ptr()),
                    "configuring the Ceph client",
                )
            };
            set("rbd_cache", rbd_cache)?;
            if let Some(max_dirty) = max_dirty {
                set("rbd_cache_max_dirty", max_dirty)?;
            }
            check(
                rados_connect(this.cluster),
                "connecting to the Ceph cluster",
            )?;
            check(
                rados_ioctx_create(this.cluster, pool.as_ptr(), &mut this.ioctx),
                &format!("opening pool {}", target.pool),
            )?;
            let opened = if read_only {
                rbd_open_read_only(this.ioctx, name.as_ptr(), &mut this.image, std::ptr::null())
            } else {
                rbd_open(this.ioctx, name.as_ptr(), &mut this.image, std::ptr::null())
            };
            check(
                opened,
                &format!("opening image {}/{}", target.pool, target.image),
            )?;
            if !read_only {
                // Held, not lent: another client asking for it is refused while we run.
                let what = format!(
                    "taking the exclusive lock of {}/{}",
                    target.pool, target.image
                );
                match rbd_lock_acquire(this.image, RBD_LOCK_MODE_EXCLUSIVE) {
                    rc if rc == -libc::EROFS => {
                        return Err(io::Error::new(
                            io::ErrorKind::ResourceBusy,
                            format!("{what}: another client holds it"),
                        ))
                    }
                    rc => check(rc, &what)?,
                }
            }
        }
        Ok(this)
    }

    fn size(&self) -> io::Result<u64> {
        let mut size = 0;
        // SAFETY: an open image and a u64 on this frame.
        let rc = unsafe { rbd_get_size(self.image, &mut size) };
        check(rc, "reading the image size")?;
        Ok(size)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: each handle was created by `open` (null ones never were) and nothing uses
        // it after this; children are released before their parents.
        unsafe {
            if !self.image.is_null() {
                rbd_close(self.image);
            }
            if !self.ioctx.is_null() {
                rados_ioctx_destroy(self.ioctx);
            }
            if !self.cluster.is_null() {
                rados_shutdown(self.cluster);
            }
        }
    }
}

/// What librbd's threads hand back to the I/O thread.
#[derive(Debug)]
struct Finished {
    /// (tag, librbd's return value) of operations librbd finished.
    done: Mutex<Vec<(u16, isize)>>,
    signal: EventFd,
}

/// One operation's callback argument: who to tell, and which operation it was.
struct CallbackArg {
    finished: Arc<Finished>,
    tag: u16,
}

extern "C" fn on_complete(completion: Completion, arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<CallbackArg>` `submit` leaked for this completion, which librbd
    // calls back exactly once; the completion is released here and never used again.
    let (arg, ret) = unsafe {
        let ret = rbd_aio_get_return_value(completion);
        rbd_aio_release(completion);
        (Box::from_raw(arg.cast::<CallbackArg>()), ret)
    };
    arg.finished
        .done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((arg.tag, ret));
    let _ = arg.finished.signal.write(1);
}

pub struct RbdBackend {
    in_flight: Vec<Option<Io>>,
    /// Closed by `Drop` once nothing is in flight.
    image: std::mem::ManuallyDrop<Image>,
    size: u64,
    finished: Arc<Finished>,
    /// Operations librbd refused to start.
    failed: Vec<Done>,
}

impl std::fmt::Debug for RbdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdBackend")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RbdBackend {
    /// Opens `target` for up to `depth` operations in flight.
    pub fn open(
        target: &RbdTarget,
        read_only: bool,
        cache: CacheMode,
        depth: u16,
    ) -> io::Result<Self> {
        let image = Image::open(target, read_only, cache)?;
        let size = image.size()?;
        Ok(Self {
            in_flight: (0..depth).map(|_| None).collect(),
            image: std::mem::ManuallyDrop::new(image),
            size,
            finished: Arc::new(Finished {
                done: Mutex::new(Vec::new()),
                signal: EventFd::new(EFD_NONBLOCK)?,
            }),
            failed: Vec::new(),
        })
    }

    fn fail(&mut self, io: Io, error: io::Error) {
        self.failed.push(Done::failed(io, error));
        // Wake the I/O thread so the failure is reported now, not at some later completion.
        let _ = self.finished.signal.write(1);
    }
}

impl BlkBackend for RbdBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&mut self, mut io: Io) {
        let slot = usize::from(io.tag);
        if self.in_flight.get(slot).is_none_or(Option::is_some) {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "tag out of range or in use");
            return self.fail(io, e);
        }
        let arg = Box::into_raw(Box::new(CallbackArg {
            finished: self.finished.clone(),
            tag: io.tag,
        }));
        let image = self.image.image;
        let (offset, buf) = (io.offset, io.buf.as_mut_slice());
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        let mut completion: Completion = std::ptr::null_mut();
        // SAFETY: `completion` gets `arg`, which `on_complete` takes back. The buffer belongs
        // to `io`, which moves into `in_flight` below and stays there until `complete` has
        // seen librbd's callback for it (its heap block does not move with `io`); when librbd
        // refuses the operation, no callback comes and `arg` is reclaimed here.
        let rc = unsafe {
            let rc = rbd_aio_create_completion(arg.cast(), on_complete, &mut completion);
            if rc < 0 {
                rc
            } else {
                let rc = match io.op {
                    Op::Read => rbd_aio_read(image, offset, len, ptr.cast(), completion),
                    Op::Write => rbd_aio_write(image, offset, len, ptr.cast(), completion),
                    Op::Flush => rbd_aio_flush(image, completion),
                    Op::Discard { len } => rbd_aio_discard(image, offset, len, completion),
                    Op::WriteZeroes { len, .. } => match usize::try_from(len) {
                        Ok(len) => rbd_aio_write_zeroes(image, offset, len, completion, 0, 0),
                        Err(_) => -libc::EINVAL,
                    },
                };
                if rc < 0 {
                    rbd_aio_release(completion);
                }
                rc
            }
        };
        if let Err(e) = check(rc, "starting an RBD operation") {
            // SAFETY: librbd refused the operation, so no callback owns `arg`.
            drop(unsafe { Box::from_raw(arg) });
            return self.fail(io, e);
        }
        self.in_flight[slot] = Some(io);
    }

    fn complete(&mut self, out: &mut Vec<Done>) {
        out.append(&mut self.failed);
        let done =
            std::mem::take(&mut *self.finished.done.lock().unwrap_or_else(|e| e.into_inner()));
        for (tag, ret) in done {
            let Some(mut io) = self
                .in_flight
                .get_mut(usize::from(tag))
                .and_then(Option::take)
            else {
                continue;
            };
            // Reads report the bytes read; everything else 0 when done (librbd does no short
            // writes).
            let expected = match io.op {
                Op::Read => io.buf.as_mut_slice().len(),
                Op::Write | Op::Flush | Op::Discard { .. } | Op::WriteZeroes { .. } => 0,
            };
            let result = match usize::try_from(ret) {
                Ok(n) if n == expected || io.op != Op::Read => Ok(()),
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {expected} bytes transferred"),
                )),
                // A blocklisted (fenced) client gets ESHUTDOWN for everything: the guest sees
                // I/O errors, as it would from a disk that went away.
                Err(_) => Err(io::Error::from_raw_os_error(
                    i32::try_from(-ret).unwrap_or(libc::EIO),
                )),
            };
            out.push(Done {
                tag,
                result,
                buf: io.buf,
            });
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.finished.signal.as_raw_fd())
    }
}

/// How long dropping a disk waits for librbd to finish what is in flight (a cluster that does
/// not answer makes operations wait forever).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for RbdBackend {
    fn drop(&mut self) {
        // librbd may still write into buffers we own: wait until it has reported all of them.
        let start = std::time::Instant::now();
        let mut sink = Vec::new();
        while self.in_flight.iter().any(Option::is_some) {
            if start.elapsed() > DRAIN_TIMEOUT {
                // Leak the buffers and the image rather than free what librbd still uses.
                tracing::warn!("RBD operations still in flight after {DRAIN_TIMEOUT:?}");
                std::mem::forget(std::mem::take(&mut self.in_flight));
                return;
            }
            self.complete(&mut sink);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: dropped once, here, and never used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.image) };
    }
}
